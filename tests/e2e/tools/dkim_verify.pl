#!/usr/bin/perl
# Verify the DKIM signatures of the message on stdin with Mail::DKIM (libmail-dkim-perl),
# looking keys up at the DNS server on 127.0.0.1:PORT. Prints one line per signature,
# "<algorithm> <domain> <result>", then "result <overall>".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my $port = shift @ARGV or die "usage: dkim_verify.pl PORT < message\n";
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1, retry => 2, udp_timeout => 5, tcp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    printf "%s %s %s\n", $sig->algorithm, $sig->domain, $sig->result_detail;
}
print "result ", $dkim->result, "\n";
