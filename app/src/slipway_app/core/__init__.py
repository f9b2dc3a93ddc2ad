"""What the web app, the worker and the CLI share: settings, database, migrations, logging,
errors, middleware, lifespan, readiness checks and HTTP metrics."""
