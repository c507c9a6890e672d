-- Whether the connected user may vacuum call_queue: it owns it (or is a member of the role
-- that does), or is a superuser.
SELECT pg_has_role(current_user, relowner, 'USAGE')
       OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_class
WHERE oid = 'call_queue'::regclass
