-- The per-role statement timeouts stored in the database (ALTER ROLE ... SET
-- statement_timeout), as the JSON postrust takes in PGRST_ROLE_SETTINGS:
-- {"anon":{"statement_timeout":3000},...} in milliseconds. PostgREST applies a
-- role's settings when it switches to that role; postrust does not read
-- pg_db_role_setting itself, so scripts/stack.sh and the tests pass it this.
-- Login roles (authenticator) are left out: Postgres applies their settings to
-- the login session itself.
SELECT coalesce(json_object_agg(rolname, json_build_object('statement_timeout', ms) ORDER BY rolname), '{}')::text
FROM (
    SELECT DISTINCT ON (r.rolname)
           r.rolname,
           CASE WHEN v.value ~ '^\d+$' THEN v.value::bigint
                ELSE (extract(epoch FROM v.value::interval) * 1000)::bigint
           END AS ms
    FROM pg_db_role_setting s
    JOIN pg_roles r ON r.oid = s.setrole
    CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
    CROSS JOIN LATERAL (SELECT substr(c.setting, length('statement_timeout=') + 1) AS value) v
    WHERE c.setting LIKE 'statement\_timeout=%'
      AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
      AND r.rolcanlogin IS FALSE
    -- A database-specific setting wins over the role-wide one, as in Postgres.
    ORDER BY r.rolname, s.setdatabase DESC
) t;
