"""People who use the console and the API: accounts with a role, passwords, login sessions."""
