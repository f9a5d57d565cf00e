"""Show: Grafana dashboards as code and reports."""
