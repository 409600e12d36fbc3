"""Operations a platform engineer runs: dead-letter replay, backfill, retention (CLI, HTTP, timers)."""
