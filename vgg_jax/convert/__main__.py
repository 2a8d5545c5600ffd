import sys

from vgg_jax.convert.cli import main

sys.exit(main())
