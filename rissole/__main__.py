import sys

from rissole.cli.main import main

sys.exit(main())
