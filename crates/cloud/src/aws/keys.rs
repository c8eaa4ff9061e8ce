//! Key pairs for the library: import a public key, read one, delete one.

use std::path::Path;

use super::{AwsCloud, absent, ignore_not_found, sdk_error};
use crate::error::{CloudError, ErrorKind};
use crate::model::KeyPair;

impl AwsCloud {
    /// Imports the public key in `public_key_file` as key pair `name`. If a key
    /// pair of that name exists it is left as it is and returned (`created = false`).
    pub async fn import_key_pair(
        &self,
        name: &str,
        public_key_file: &Path,
    ) -> Result<KeyPair, CloudError> {
        const OP: &str = "ImportKeyPair";
        if let Some(existing) = self.key_pair(name).await? {
            return Ok(existing);
        }
        let material = std::fs::read(public_key_file).map_err(|e| {
            CloudError::other(
                OP,
                ErrorKind::InvalidRequest,
                format!("cannot read {}: {e}", public_key_file.display()),
            )
        })?;
        let out = self
            .ec2
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(material))
            .send()
            .await;
        match out {
            Ok(out) => Ok(KeyPair {
                name: name.into(),
                fingerprint: out.key_fingerprint().map(str::to_owned),
                created: true,
            }),
            // Lost a race with another import of the same name: that one stands.
            Err(e) => {
                let err = sdk_error(OP, e);
                if err.code.as_deref() == Some("InvalidKeyPair.Duplicate")
                    && let Some(existing) = self.key_pair(name).await?
                {
                    return Ok(existing);
                }
                Err(err)
            }
        }
    }

    /// The key pair named `name`, if it exists.
    pub async fn key_pair(&self, name: &str) -> Result<Option<KeyPair>, CloudError> {
        Ok(absent(
            self.ec2
                .describe_key_pairs()
                .key_names(name)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeKeyPairs", e)),
        )?
        .and_then(|out| {
            out.key_pairs().first().map(|k| KeyPair {
                name: k.key_name().unwrap_or(name).to_owned(),
                fingerprint: k.key_fingerprint().map(str::to_owned),
                created: false,
            })
        }))
    }

    /// Deletes a key pair (no error if it does not exist).
    pub async fn delete_key_pair(&self, name: &str) -> Result<(), CloudError> {
        ignore_not_found(
            self.ec2
                .delete_key_pair()
                .key_name(name)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteKeyPair", e)),
        )
    }
}
