"""`python -m controller.kube --settings JSON --cluster JSON`: cluster mode without the CLI."""

import sys

from controller.kube.run import main

sys.exit(main())
