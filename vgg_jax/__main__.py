import sys

from vgg_jax.cli import main

sys.exit(main())
