"""Readers that turn published weight files into isojax's parameter layout."""
