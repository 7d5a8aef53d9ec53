import sys

from blynk_server.cli import main

sys.exit(main())
