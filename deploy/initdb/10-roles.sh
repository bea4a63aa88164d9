#!/bin/sh
# First start of the postgres container: the four group roles of migration 0006 (it finds them
# and grants to them) and one login role per process, with passwords from the environment.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v serve="$REVOC_SERVE_PASSWORD" -v presign="$REVOC_PRESIGN_PASSWORD" \
     -v publish="$REVOC_PUBLISH_PASSWORD" -v admin="$REVOC_ADMIN_PASSWORD" <<'SQL'
CREATE ROLE revoc_responder NOLOGIN;
CREATE ROLE revoc_presigner NOLOGIN;
CREATE ROLE revoc_publisher NOLOGIN;
CREATE ROLE revoc_admin NOLOGIN;
CREATE ROLE serve LOGIN PASSWORD :'serve' IN ROLE revoc_responder;
CREATE ROLE presign LOGIN PASSWORD :'presign' IN ROLE revoc_presigner;
CREATE ROLE publish LOGIN PASSWORD :'publish' IN ROLE revoc_publisher;
CREATE ROLE admin LOGIN PASSWORD :'admin' IN ROLE revoc_admin;
SQL
