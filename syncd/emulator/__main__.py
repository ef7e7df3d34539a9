"""``python -m syncd.emulator --port 12111 --seed customers=1000``"""

import argparse

from .cli import configure_parser, run

parser = argparse.ArgumentParser(
    prog="python -m syncd.emulator", description="Run the Stripe emulator."
)
configure_parser(parser)
raise SystemExit(run(parser.parse_args()))
