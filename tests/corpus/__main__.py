import sys
from pathlib import Path

from . import write_all

write_all(Path(sys.argv[1]))
