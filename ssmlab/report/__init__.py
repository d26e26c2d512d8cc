"""Reports built only from the results store."""

from ssmlab.report.build import build_report
from ssmlab.report.leaderboard import format_table, leaderboard

__all__ = ["build_report", "format_table", "leaderboard"]
