"""Data: raw sources -> one HDF5 layout (`prepare`) -> Lightning DataModules.

Modules: one per source (enwik8, cifar10, imagenet64, audio, raw_bytes, image_folder,
digits), `hdf5` (the one writer and reader), `download`, `checksums`, `splits`, `mulaw`,
`datamodule` (loading), `prepare` (the CLI subcommand). Import them directly; this
package imports nothing heavy.
"""
