"""`python -m stemsplit` runs the command line."""
from stemsplit.cli import main

if __name__ == "__main__":
    main()
