"""The web console: server-rendered pages (Jinja2) over the same database and API the CLI uses.

Pages read through `queries.py`; every action a page offers is a call to the JSON API (`static/console.js`
sends it with the login's CSRF token), so the console can never do what the API would refuse.
"""
