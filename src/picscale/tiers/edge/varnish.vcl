vcl 4.1;
# Picscale's CDN edge: Varnish 7.1 with varnish-modules' xkey (Debian: varnish,
# varnish-modules). Rendered by picscale.tiers.edge.varnish.render_vcl, which fills in its
# placeholders (origin, purge ACL, timings; a literal dollar is written twice). What it
# does:
# - keeps media variants (large, thumb) and static files; originals go to the origin
#   every time (they are big, rarely viewed, and would crowd out the variants: README);
# - probes the origin's /readyz; keeps /metrics and /readyz to itself (404 at the edge);
# - purges by surrogate key: PURGE with `xkey-purge: photo-1 user-2`, from the ACL only;
# - serves stale objects for a grace period while the origin is down (stale-if-error),
#   and for a few seconds while it revalidates (stale-while-revalidate);
# - marks every response X-Cache: HIT, HIT-STALE, MISS or PASS;
# - answers /.edge/health itself: the app's health check of the edge, not of the origin.

import std;
import xkey;

backend origin {
    .host = "${origin_host}";
    .port = "${origin_port}";
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 10s;
    .probe = {
        .url = "/readyz";  # alive is not enough: it can serve (see /readyz)
        .timeout = 1s;
        .interval = ${probe_interval};
        .window = 3;
        .threshold = 2;
        .initial = 2;
    }
}

acl purgers {
${purgers}
}

sub vcl_recv {
    # these say what the edge did; a client does not get to say it
    unset req.http.x-edge-pass;
    unset req.http.x-edge-stale;
    if (req.url == "/.edge/health") {
        return (synth(200, "edge ok"));
    }
    if (req.url ~ "^/(metrics|readyz)(\?|$$)") {
        return (synth(404, "not served at the edge"));
    }
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "purging is allowed from the purge ACL only"));
        }
        if (!req.http.xkey-purge) {
            return (synth(400, "PURGE needs an xkey-purge header: the surrogate keys to drop"));
        }
        set req.http.n-gone = xkey.purge(req.http.xkey-purge);
        return (synth(200, "purged " + req.http.n-gone + " objects"));
    }
    # while the origin answers, stale objects are served only while they revalidate
    if (std.healthy(req.backend_hint)) {
        set req.grace = ${revalidate_grace};
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    # of the media, only the variants pages show are kept (originals are big and rarely
    # viewed: README); an allow-list, so no other spelling of a URL gets in
    if (req.url ~ "^/media/" &&
        req.url !~ "^/media/[0-9]+/v[0-9]+/(large|thumb)\.(jpg|png|webp)$$") {
        return (pass);
    }
    if (req.url ~ "^/(media|static)/") {
        # the same bytes for everyone: credentials do not vary them
        unset req.http.Cookie;
        unset req.http.Authorization;
        return (hash);
    }
    # anything else is kept only for anonymous visitors, and only when the origin says
    # it may be (Cache-Control: public, s-maxage)
    if (req.http.Cookie || req.http.Authorization) {
        return (pass);
    }
    # htmx asks for fragments at the URLs of whole pages: never share those
    if (req.http.HX-Request) {
        return (pass);
    }
    return (hash);
}

sub vcl_hit {
    if (obj.ttl <= 0s) {
        set req.http.x-edge-stale = "1";
    }
}

sub vcl_pass {
    set req.http.x-edge-pass = "1";
}

sub vcl_backend_response {
    if (beresp.status >= 500 && bereq.is_bgfetch) {
        # a failed revalidation keeps the stale copy (stale-if-error) instead of
        # replacing it with the error
        return (abandon);
    }
    if (beresp.status >= 400) {
        # an error (a deleted photo's 404) is not kept: the next request asks again
        set beresp.ttl = 0s;
        set beresp.grace = 0s;
        set beresp.uncacheable = true;
        return (deliver);
    }
    if (bereq.url ~ "^/(media|static)/") {
        set beresp.grace = ${media_grace};
    } elsif (beresp.http.Cache-Control ~ "stale-if-error=[0-9]+") {
        set beresp.grace = std.duration(
            regsub(beresp.http.Cache-Control, ".*stale-if-error=([0-9]+).*", "\1s"), 0s);
    }
}

sub vcl_deliver {
    if (req.http.x-edge-pass) {
        set resp.http.X-Cache = "PASS";
    } elsif (obj.hits > 0 && req.http.x-edge-stale) {
        set resp.http.X-Cache = "HIT-STALE";
    } elsif (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    set resp.http.X-Cache-Hits = obj.hits;
    # surrogate keys are for the edge; browsers have no use for them
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
}
