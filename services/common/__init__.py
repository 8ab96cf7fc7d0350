"""What every Pingvas process shares: settings, the database, auth, errors and the gRPC server."""
