"""Zip archives (`.npz`, `torch.save` files) whose declared sizes are checked before anything is read.

A zip's directory declares each member's offset, compressed and uncompressed size; a tampered one can ask
a reader to allocate terabytes before it reads a byte. Every member is checked against the bytes the file
holds when the archive is opened, and members are read only in amounts their checked sizes allow.
"""

from __future__ import annotations

import errno
import os
import zipfile

# Deflate cannot expand data by more than about 1032:1 (RFC 1951: a 258-byte match costs at least 2 bits),
# so a member declaring more is corrupt. A stored member's two sizes are equal.
MAX_DEFLATE_RATIO = 1032
_METHODS = {zipfile.ZIP_STORED: 'stored', zipfile.ZIP_DEFLATED: 'deflated'}


def _check_member(info: zipfile.ZipInfo, file_bytes: int) -> None:
  """Refuses a member whose declared place or sizes do not fit in a file of `file_bytes` bytes."""
  name = info.filename
  if info.flag_bits & 0x1:
    raise ValueError(f'member {name!r} is encrypted')
  if info.compress_type not in _METHODS:
    raise ValueError(f'member {name!r} uses compression method {info.compress_type}; expected stored or deflated')
  if info.header_offset < 0:  # zipfile shifts offsets by the bytes it finds missing before the directory
    raise ValueError(f'member {name!r} starts at offset {info.header_offset}, before the start of the file')
  if info.header_offset + info.compress_size > file_bytes:
    raise ValueError(
      f'member {name!r} declares {info.compress_size} bytes at offset {info.header_offset}, '
      f'past the end of the {file_bytes}-byte file'
    )
  if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
    raise ValueError(f'stored member {name!r} declares {info.file_size} bytes but holds {info.compress_size}')
  if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 64:
    raise ValueError(
      f'member {name!r} declares {info.file_size} bytes from {info.compress_size} compressed, '
      f'more than deflate can expand ({MAX_DEFLATE_RATIO}:1)'
    )


def open_checked(path: str) -> zipfile.ZipFile:
  """The zip archive at `path`, every member's declared extent checked against the file's size."""
  try:
    archive = zipfile.ZipFile(path)
  except OSError as e:
    if e.errno != errno.EINVAL:
      raise
    # zipfile seeks to where the end-of-archive record says the directory starts: before the file's start
    raise ValueError('its end-of-archive record places the zip directory outside the file') from None
  try:
    file_bytes = os.path.getsize(path)
    for info in archive.infolist():
      _check_member(info, file_bytes)
  except BaseException:
    archive.close()
    raise
  return archive


def read_exactly(file, count: int, what: str) -> bytes:
  """`count` bytes of an open member (`count` already checked against its size), or an error naming `what`."""
  data = file.read(count)
  if len(data) != count:
    raise ValueError(f'{what} needs {count} bytes but the member ends after {len(data)}')
  return data


def cause(error: BaseException, limit: int = 240) -> str:
  """`Type: message` of a parser's error in one short line (zipfile quotes whole headers in its messages)."""
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'
