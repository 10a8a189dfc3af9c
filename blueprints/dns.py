"""What a stack's outputs say about DNS: every domain the app's reverse proxy serves, and the
records that point each of them at the stack's public address (`dnsRecord`).

The proxy asks Let's Encrypt for a certificate for every host it routes (Caddy, Traefik, the
k8s Ingress's cert-manager), and the HTTP challenge only succeeds for a name that resolves to the
stack: so every one of them needs its record, not only the app's main domain.
"""

from __future__ import annotations

import ipaddress

from blueprints.spec import AppSpec


def served_domains(app: AppSpec) -> list[str]:
    """The app's domain and every host an `expose: http` port answers, sorted, each once."""
    hosts = {app.domain}
    for _, svc in app.sorted_services():
        hosts.update(port.host for port in svc.public_http_ports if port.host)
    return sorted(hosts)


# A zone-file comment after the records when one of them is a CNAME (a cloud load balancer has a
# name, not a fixed address): no CNAME may sit at a zone apex (example.com itself, beside its SOA
# and NS records), and which domain is an apex cannot be told from here.
APEX_NOTE = (
    "; a zone apex (example.com itself) cannot hold a CNAME: "
    "use an ALIAS/ANAME record (Route 53: alias) to the same name"
)


def dns_record(domain: str, address: str) -> str:
    """One zone-file line pointing `domain` at `address`: A or AAAA for an IP address, CNAME for
    a host name (a cloud load balancer's)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{domain}. CNAME {address.rstrip('.')}."
    return f"{domain}. {'A' if ip.version == 4 else 'AAAA'} {ip}"


def dns_records(app: AppSpec, address: str) -> str:
    """The `dnsRecord` output: a record per served domain, one zone-file line each, sorted (a
    single line when the app serves its domain alone, an IP address); after CNAME records,
    APEX_NOTE on a line of its own."""
    lines = [dns_record(domain, address) for domain in served_domains(app)]
    if any(line.split(" ")[1] == "CNAME" for line in lines):
        lines.append(APEX_NOTE)
    return "\n".join(lines)
