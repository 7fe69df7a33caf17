"""Real GUI clients (Gajim, NeoChat) with real servers on loopback, through hush."""
