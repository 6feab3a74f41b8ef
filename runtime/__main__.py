import sys

from iotrt.cli import main

sys.exit(main())
