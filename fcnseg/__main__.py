"""``python -m fcnseg`` (also what torchrun launches)."""
from fcnseg.cli.main import main

raise SystemExit(main())
