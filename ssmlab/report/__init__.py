"""Reports built only from the results store."""

from ssmlab.report.leaderboard import format_table, leaderboard
