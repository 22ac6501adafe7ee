"""Testing toolkit for cancellation-safe WebSocket test suites (see README, "Testing your app")."""
