"""`revoc admin-api`: the authenticated JSON API over revoc/admin.py (issue 14, point 3)."""
