"""`python -m actlab` runs the command line."""

from actlab.cli.main import main

main()
