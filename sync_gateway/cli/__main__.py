import sys

from sync_gateway.cli.commands import main

sys.exit(main())
