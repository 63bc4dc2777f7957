"""Authoritative answers from our zones: query Message -> response Message, no I/O.

Theory of operation (RFC 1034 §4.3.2, the algorithm, step by step):

1. Pick the zone: the longest origin among ours that contains QNAME (step 2). None: REFUSED;
   this is where a forwarder would take over (see ``Reply.forwardable`` in ``responder``).
   A DS query at a zone apex goes to the parent zone when we serve it (RFC 4035 §3.1.4.1).
2. Walk down from the apex towards QNAME, label by label (step 3):
   - a zone cut (NS below the apex) on the way, or at QNAME itself unless QTYPE is DS (the DS
     lives in the parent, RFC 4035 §2.4), gives a referral: NS in authority, glue A/AAAA in
     additional, AA clear (step 3b);
   - a missing name ends the walk at the closest encloser; the wildcard ``*.<encloser>``, if
     present, is the source of synthesis (RFC 4592 §3.3.1), otherwise NXDOMAIN. Names that
     exist, empty non-terminals included, are never wildcard-matched (RFC 4592 §2.2.2).
3. At the name found (step 3a): the RRset of QTYPE; else a CNAME, which is added and followed
   inside this zone, until it leaves the zone, loops or reaches ``MAX_CNAME_CHAIN``
   (RFC 1034 §3.6.2); else NODATA. A target in another zone, even one we serve, is left to
   the resolver, as Knot DNS, BIND and NSD do: the answer then ends with the CNAME (NOERROR,
   no SOA), and one zone's data never vouches for another's.
4. Negative answers (NXDOMAIN, NODATA) carry the zone SOA in authority with TTL
   min(SOA TTL, SOA MINIMUM) (RFC 2308 §3); the RCODE is that of the last name of a CNAME
   chain (RFC 6604 §2.1).
5. Additional section: A/AAAA of NS, MX and SRV targets in the answering zone, not below
   a cut (step 6); targets in other zones, even ours, are not added (as Knot and BIND).
6. QTYPE ANY gets one RRset of the name, the one with the lowest type code (RFC 8482 §4.2).

The response is built with ``dns.message.make_response``, so the question is echoed exactly
as asked (case kept, RFC 4343 §4); lookups are case-insensitive because ``dns.name.Name``
compares and hashes case-insensitively.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dnstfo.answer.zones import LoadedZone, RRsetsByType, load_zones
from dnstfo.errors import ZoneLoadError

log = logging.getLogger(__name__)

#: Longest CNAME chain followed before answering with what we have (RFC 1034 §3.6.2).
MAX_CNAME_CHAIN = 16

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
_WILDCARD = dns.name.Name((b"*",))


class Outcome(enum.Enum):
    """What a lookup of one name in one zone found."""

    ANSWER = "answer"
    """The RRset of the asked type."""
    CNAME = "cname"
    """A CNAME to follow."""
    NODATA = "nodata"
    """The name exists (maybe as an empty non-terminal) without the type."""
    NXDOMAIN = "nxdomain"
    """The name does not exist, and no wildcard covers it."""
    REFERRAL = "referral"
    """The name is at or below a zone cut."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """The result of looking one name up in one zone."""

    outcome: Outcome
    """What was found."""
    rrset: dns.rrset.RRset | None = None
    """The answer or CNAME RRset (owner = the name looked up), or the cut's NS RRset."""


def _owned_by(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    """The RRset with ``owner`` as owner name (wildcard synthesis, RFC 4592 §3.3.1)."""
    if rrset.name == owner:
        return rrset
    synthesized = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype, rrset.covers)
    synthesized.update(rrset)
    return synthesized


def _at_node(by_type: RRsetsByType | None, owner: dns.name.Name, qtype: int) -> Lookup:
    """Looks the type up at an existing (or synthesized) name (RFC 1034 §4.3.2 step 3a)."""
    if not by_type:  # an empty non-terminal
        return Lookup(Outcome.NODATA)
    if qtype == dns.rdatatype.ANY:
        # RFC 8482 §4.2: answer with one RRset only.
        return Lookup(Outcome.ANSWER, _owned_by(by_type[min(by_type)], owner))
    rrset = by_type.get(qtype)
    if rrset is not None:
        return Lookup(Outcome.ANSWER, _owned_by(rrset, owner))
    cname = by_type.get(dns.rdatatype.CNAME)
    if cname is not None:
        return Lookup(Outcome.CNAME, _owned_by(cname, owner))
    return Lookup(Outcome.NODATA)


def lookup(zone: LoadedZone, name: dns.name.Name, qtype: int) -> Lookup:
    """Looks one name up in one zone (RFC 1034 §4.3.2 step 3, RFC 4592).

    Args:
        zone: the zone, which must contain ``name``.
        name: the name asked for.
        qtype: the type asked for.

    Returns:
        What the zone says about the name.
    """
    depth = len(zone.origin)
    encloser = zone.origin
    for labels in range(depth + 1, len(name) + 1):
        ancestor = name if labels == len(name) else name.split(labels)[1]
        if ancestor not in zone.names:
            wildcard = zone.rrsets.get(_WILDCARD.concatenate(encloser))
            if wildcard is None:
                return Lookup(Outcome.NXDOMAIN)
            return _at_node(wildcard, name, qtype)
        if ancestor in zone.cuts and not (ancestor == name and qtype == dns.rdatatype.DS):
            return Lookup(Outcome.REFERRAL, zone.rrsets[ancestor][dns.rdatatype.NS])
        encloser = ancestor
    return _at_node(zone.rrsets.get(name), name, qtype)


def _targets(rrset: dns.rrset.RRset) -> Iterable[dns.name.Name]:
    """The names an NS, MX or SRV RRset points at (RFC 1035 §3.3, RFC 2782)."""
    if rrset.rdtype in (dns.rdatatype.NS, dns.rdatatype.SRV):
        return (rdata.target for rdata in rrset)
    if rrset.rdtype == dns.rdatatype.MX:
        return (rdata.exchange for rdata in rrset)
    return ()


@dataclass(frozen=True, slots=True)
class Authority:
    """The zones we serve, as one immutable generation.

    A reload builds a new Authority with ``generation + 1``; caches key on the generation.
    """

    zones: Mapping[dns.name.Name, LoadedZone] = field(default_factory=dict)
    """The zones by origin."""
    generation: int = 1
    """Counts reloads; anything derived from the zones is valid for one generation only."""

    @classmethod
    def load(cls, directory: Path) -> tuple[Authority, list[ZoneLoadError]]:
        """Loads every zone file of a directory.

        Args:
            directory: the zone directory.

        Returns:
            The authority (possibly without some zones) and one error per broken file;
            the caller decides whether errors at start-up are fatal.

        Raises:
            ZoneLoadError: the directory cannot be listed.
        """
        zones, errors = load_zones(directory)
        return cls(zones), errors

    def reload(self, directory: Path) -> tuple[Authority, list[ZoneLoadError]]:
        """Loads the directory again, keeping our version of zones whose file now fails.

        Only files whose bytes changed are parsed; the others keep their zone objects. A
        zone whose file was removed is dropped; a zone whose file fails to load stays as it
        was (matched by file path). The result replaces this authority in one assignment.
        Safe to run in another thread: it reads this authority and builds a new one.

        Args:
            directory: the zone directory.

        Returns:
            The next generation and one error per broken file.

        Raises:
            ZoneLoadError: the directory cannot be listed (keep using this authority).
        """
        known = {zone.path: zone for zone in self.zones.values()}
        zones, errors = load_zones(directory, known)
        failed = {error.path for error in errors}
        for origin, zone in self.zones.items():
            if str(zone.path) in failed and origin not in zones:
                log.warning("keeping %s serial %d: its file failed", origin, zone.serial)
                zones[origin] = zone
        return Authority(zones, self.generation + 1), errors

    def find_zone(self, name: dns.name.Name) -> LoadedZone | None:
        """The zone with the longest origin that contains ``name``, or None.

        Args:
            name: an absolute name.

        Returns:
            The closest enclosing zone we serve, or None when we are not authoritative.
        """
        labels = name.labels
        for start in range(len(labels)):
            zone = self.zones.get(dns.name.Name(labels[start:]))
            if zone is not None:
                return zone
        return None

    def covers(self, name: dns.name.Name) -> bool:
        """Whether ``name`` lies in one of our zones (otherwise a forwarder could answer)."""
        return self.find_zone(name) is not None

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """Answers a standard query with one question from our zones.

        EDNS and truncation are the caller's business (see ``responder``): the response
        carries whatever OPT ``make_response`` gives it.

        Args:
            query: a parsed query with exactly one question.

        Returns:
            The response: an answer, NXDOMAIN, NODATA, a referral or REFUSED.
        """
        response = dns.message.make_response(query, pad=0)
        response.flags |= query.flags & dns.flags.CD  # RFC 4035 §3.1.6
        question = query.question[0]
        zone = None
        if question.rdclass == dns.rdataclass.IN:
            zone = self._zone_for_question(question.name, question.rdtype)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        self._resolve(response, zone, question.name, question.rdtype)
        return response

    def _zone_for_question(self, qname: dns.name.Name, qtype: int) -> LoadedZone | None:
        """Step 1: the zone to answer from, sending DS at an apex to the parent zone."""
        zone = self.find_zone(qname)
        if (
            zone is not None
            and qtype == dns.rdatatype.DS
            and qname == zone.origin
            and qname != dns.name.root
        ):
            parent = self.find_zone(qname.parent())
            if parent is not None:
                return parent
        return zone

    def _resolve(
        self,
        response: dns.message.Message,
        zone: LoadedZone,
        qname: dns.name.Name,
        qtype: int,
    ) -> None:
        """Steps 2-5: fills the response sections, following CNAMEs inside ``zone``."""
        name = qname
        seen = {qname}
        for _ in range(MAX_CNAME_CHAIN):
            found = lookup(zone, name, qtype)
            if found.outcome is Outcome.ANSWER:
                assert found.rrset is not None
                response.answer.append(found.rrset)
                self._add_addresses(response, zone, _targets(found.rrset))
                return
            if found.outcome is Outcome.REFERRAL:
                assert found.rrset is not None
                if not response.answer:  # RFC 1034 §4.3.2 3b: not authoritative for this
                    response.flags &= ~dns.flags.AA
                response.authority.append(found.rrset)
                self._add_glue(response, zone, found.rrset)
                return
            if found.outcome is not Outcome.CNAME:
                if found.outcome is Outcome.NXDOMAIN:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(zone.negative_soa)
                return
            assert found.rrset is not None
            response.answer.append(found.rrset)
            target = found.rrset[0].target
            if target in seen or not target.is_subdomain(zone.origin):
                return  # a loop, or the chain leaves the zone: the resolver continues
            seen.add(target)
            name = target
        log.info("CNAME chain from %s longer than %d", qname, MAX_CNAME_CHAIN)

    def _add_glue(
        self, response: dns.message.Message, zone: LoadedZone, ns: dns.rrset.RRset
    ) -> None:
        """Adds A/AAAA for the NS targets of a referral that this zone holds, glue included."""
        for target in _targets(ns):
            if target.is_subdomain(zone.origin):
                self._add_address_rrsets(response, zone.rrsets.get(target))

    def _add_addresses(
        self, response: dns.message.Message, zone: LoadedZone, targets: Iterable[dns.name.Name]
    ) -> None:
        """Adds A/AAAA of targets in ``zone``, not below a cut, to additional."""
        for target in targets:
            if (
                not target.is_subdomain(zone.origin)
                or lookup(zone, target, dns.rdatatype.A).outcome is Outcome.REFERRAL
            ):
                continue
            self._add_address_rrsets(response, zone.rrsets.get(target))

    @staticmethod
    def _add_address_rrsets(response: dns.message.Message, by_type: RRsetsByType | None) -> None:
        """Appends the A and AAAA RRsets of a name to additional, once each."""
        if not by_type:
            return
        for rdtype in _ADDRESS_TYPES:
            rrset = by_type.get(rdtype)
            if rrset is not None and rrset not in response.additional:
                response.additional.append(rrset)
