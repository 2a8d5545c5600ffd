"""The networks: VGG architectures as data, the Flax modules, their params files, preprocessing and freezing."""
