#!/usr/bin/perl
# Validate the ARC chain of the message on stdin with Mail::DKIM::ARC::Verifier
# (libmail-dkim-perl), looking keys up at the DNS server on 127.0.0.1:PORT.
# Prints "result <pass|fail|none>" and, for a failure, the reason.
use strict;
use warnings;
use Mail::DKIM::ARC::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my $port = shift @ARGV or die "usage: arc_verify.pl PORT < message\n";
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1, retry => 2, udp_timeout => 5, tcp_timeout => 5));
my $arc = Mail::DKIM::ARC::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $arc->PRINT($line);
}
$arc->CLOSE;
print "result ", $arc->result, "\n";
print "reason ", ($arc->result_detail // ""), "\n";
