"""Dagster assets, one module per stage, each with its checks.

Importing the package quiets what would flood the console, the webserver and
the daemon log of every process that loads the code location: Dagster's
preview/beta notices (the stages use partitioned asset checks and
``data_version`` on purpose; one notice per decorator per process was over a
hundred lines in ten minutes of UI use) and library progress bars.
"""

import warnings

from dagster import BetaWarning, PreviewWarning

from prmforge import env

warnings.filterwarnings("ignore", category=PreviewWarning)
warnings.filterwarnings("ignore", category=BetaWarning)
env.quiet_progress_bars()
