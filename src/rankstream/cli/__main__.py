import sys

from rankstream.cli.main import main

sys.exit(main())
