"""`python -m asgi_host check MODULE:APP`: see asgi_host/_doctor.py and docs/cli.md."""

import sys

from ._doctor import main

sys.exit(main())
