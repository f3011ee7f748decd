"""``python -m mtpeft_bench`` runs the CLI (this is what ``torchrun -m mtpeft_bench`` starts)."""

from mtpeft_bench.cli import main


if __name__ == "__main__":
    main()
