"""``python -m attnflow.cli``."""
from . import main

main()
