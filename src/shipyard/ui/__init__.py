"""`shipyard ui`: a local web app over the project's database and artifact store — runs, models,
deployments and monitoring, and the actions behind the token. `app.create_app` builds it; the
command is `cli/ui.py`. Nothing here is imported by the serving process."""
