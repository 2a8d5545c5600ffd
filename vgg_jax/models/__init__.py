"""The networks: VGG architectures as data, the Flax modules, their params files and weights, preprocessing, freezing."""
