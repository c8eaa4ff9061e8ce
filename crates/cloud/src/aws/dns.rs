//! Route53: find a hosted zone, read record sets, change them in batches; Elastic IPs.

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use async_trait::async_trait;

use super::{AwsCloud, sdk_error};
use crate::error::{CloudError, ErrorKind};
use crate::model::{DnsAction, DnsChange, DnsRecord, RecordType, fqdn};
use crate::prelude::*;

fn rr_type(kind: RecordType) -> RrType {
    match kind {
        RecordType::A => RrType::A,
        RecordType::Txt => RrType::Txt,
    }
}

/// A TXT string as Route53 wants it: quoted, with `"` and `\` escaped.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The inverse of [`quote`]; a value without quotes is returned as it is.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[async_trait]
impl Dns for AwsCloud {
    /// The id of the public (or, with `private`, the private) hosted zone
    /// named `name` (`example.com` or `example.com.`), if it exists.
    async fn dns_zone(&self, name: &str, private: bool) -> Result<Option<String>, CloudError> {
        let want = fqdn(name);
        let out = self
            .route53()
            .list_hosted_zones_by_name()
            .dns_name(&want)
            .send()
            .await
            .map_err(|e| sdk_error("ListHostedZonesByName", e))?;
        Ok(out
            .hosted_zones()
            .iter()
            .find(|z| {
                fqdn(z.name()) == want && z.config().is_some_and(|c| c.private_zone()) == private
            })
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned()))
    }

    /// The record set `name` of type `kind` in zone `zone_id`, if any; TXT
    /// values come without their quotes.
    async fn dns_record(
        &self,
        zone_id: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<DnsRecord>, CloudError> {
        let want = fqdn(name);
        let rr = rr_type(kind);
        let out = self
            .route53()
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .start_record_name(&want)
            .start_record_type(rr.clone())
            .max_items(1)
            .send()
            .await
            .map_err(|e| sdk_error("ListResourceRecordSets", e))?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|r| fqdn(r.name()) == want && r.r#type() == &rr)
            .map(|r| DnsRecord {
                name: want.clone(),
                values: r
                    .resource_records()
                    .iter()
                    .map(|v| match kind {
                        RecordType::A => v.value().to_owned(),
                        RecordType::Txt => unquote(v.value()),
                    })
                    .collect(),
                ttl: r.ttl().unwrap_or(300),
            }))
    }

    /// Applies the changes as one batch (all or none).
    async fn change_dns(&self, zone_id: &str, changes: &[DnsChange]) -> Result<(), CloudError> {
        const OP: &str = "ChangeResourceRecordSets";
        let invalid = |e: aws_sdk_route53::error::BuildError| {
            CloudError::other(OP, ErrorKind::InvalidRequest, e.to_string())
        };
        let mut batch = ChangeBatch::builder().comment("spotkeeper");
        for c in changes {
            let mut set = ResourceRecordSet::builder()
                .name(fqdn(&c.record.name))
                .r#type(rr_type(c.kind))
                .ttl(c.record.ttl);
            for v in &c.record.values {
                let value = match c.kind {
                    RecordType::A => v.clone(),
                    RecordType::Txt => quote(v),
                };
                set = set.resource_records(
                    ResourceRecord::builder()
                        .value(value)
                        .build()
                        .map_err(invalid)?,
                );
            }
            let action = match c.action {
                DnsAction::Create => ChangeAction::Create,
                DnsAction::Upsert => ChangeAction::Upsert,
                DnsAction::Delete => ChangeAction::Delete,
            };
            batch = batch.changes(
                Change::builder()
                    .action(action)
                    .resource_record_set(set.build().map_err(invalid)?)
                    .build()
                    .map_err(invalid)?,
            );
        }
        self.route53()
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch.build().map_err(invalid)?)
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_strings_survive_quoting() {
        for text in [
            "heritage=spotkeeper,spotkeeper/owner=a",
            "say \"hi\" \\ bye",
            "",
        ] {
            assert_eq!(unquote(&quote(text)), text);
        }
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(unquote("bare"), "bare");
    }
}
