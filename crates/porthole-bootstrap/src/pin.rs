//! The CA pin: `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo DER (RFC 7469
//! §2.4), what kubeadm calls `--discovery-token-ca-cert-hash`. The same value comes out of
//! `openssl x509 -pubkey -in ca.crt | openssl pkey -pubin -outform der | sha256sum`.
//!
//! Hashing the key rather than the whole certificate lets a CA be re-issued (new validity)
//! without invalidating the join commands already handed out.

use std::fmt;

use ring::digest;

/// A parsed or computed `sha256:<hex>` pin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaCertHash([u8; 32]);

/// Why a pin or a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The `--ca-cert-hash` value is not `sha256:` and 64 hex digits.
    #[error("--ca-cert-hash must be sha256:<64 hex digits> (as printed by `porthole token create`); got {0:?}")]
    BadFormat(String),
    /// The CA certificate does not parse as X.509 DER.
    #[error("the CA certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),
}

impl CaCertHash {
    /// The pin of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Self, PinError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PinError::BadCertificate(e.to_string()))?;
        Ok(Self::of_spki(cert.tbs_certificate.subject_pki.raw))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parse `sha256:<hex>` (hex case-insensitive, surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<Self, PinError> {
        let bad = || PinError::BadFormat(s.to_string());
        let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }

    /// Whether the certificate `der` has this pin (an unparsable certificate never matches).
    pub fn matches_certificate(&self, der: &[u8]) -> bool {
        Self::of_certificate(der).is_ok_and(|h| h == *self)
    }
}

impl fmt::Display for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_over_the_spki_and_round_trips() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = CaCertHash::of_certificate(cert.der()).unwrap();
        // rcgen's public_key_der() is the SubjectPublicKeyInfo, independently encoded.
        assert_eq!(
            pin,
            CaCertHash::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
        let text = pin.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 64,
            "{text}"
        );
        assert_eq!(CaCertHash::parse(&text), Ok(pin));
        assert_eq!(
            CaCertHash::parse(&text.to_uppercase().replace("SHA256", "sha256")),
            Ok(pin)
        );
        assert!(pin.matches_certificate(cert.der()));

        // Another key, same subject: another pin.
        let other = rcgen::KeyPair::generate().unwrap();
        let cert2 = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        assert!(!pin.matches_certificate(cert2.der()));
        assert!(!pin.matches_certificate(b"not a certificate"));
    }

    #[test]
    fn known_spki_digest() {
        // sha256 of the empty string: checks the digest and hex formatting exactly.
        assert_eq!(
            CaCertHash::of_spki(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn bad_pins_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "sha256:",
            "sha1:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85\u{e9}",
        ] {
            let err = CaCertHash::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("sha256:<64 hex digits>"),
                "{bad:?}: {err}"
            );
        }
    }
}
