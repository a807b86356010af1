"""`danlu train ...` commands. Each parses its flags and calls the stage's library function."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True)
