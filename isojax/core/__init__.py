"""What every layer of isojax needs, and nothing above it: the config schema (`config`), its validation
(`validation`) and loading (`loading`); the workdir and checkpoint format every run writes (`workdir`,
`checkpoint`); placing data and state on devices and joining hosts (`devices`); host memory
(`host_memory`); the classification losses (`losses`); timing a stream of batches (`throughput`). Imports nothing
else of isojax."""
