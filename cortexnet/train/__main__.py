"""``python -m cortexnet.train``: see :mod:`cortexnet.train.app`."""

from cortexnet.train.app import main

main()
