from __future__ import annotations

from picklegate.cli import main

raise SystemExit(main())
