import sys

from hush.daemon.cli.main import main

sys.exit(main())
