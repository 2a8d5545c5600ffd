import sys

from vgg_jax.cli import main

if __name__ == "__main__":  # a worker process spawned by the input pipeline imports this module again
    sys.exit(main())
