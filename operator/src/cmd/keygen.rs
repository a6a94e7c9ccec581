//! `komptroller keygen`: an Ed25519 key pair for signing reports, as
//! standard PEM files (PKCS#8 private key, SPKI public key) that openssl
//! and other tools read.

use std::path::PathBuf;
use std::process::ExitCode;

use super::bundle::{PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, write_key_pair};

/// Generate an Ed25519 signing key pair.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Writes DIR/signing-key.pem (PKCS#8, mode 0600) and DIR/public-key.pem (SPKI). \
The key id printed is the SHA-256 of the public key's DER form, as in: \
openssl pkey -pubin -in public-key.pem -outform DER | sha256sum"
)]
pub struct KeygenArgs {
    /// Directory for signing-key.pem and public-key.pem (created if missing).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["private", "public"])]
    pub out: Option<PathBuf>,
    /// Path of the private key instead (PKCS#8 PEM).
    #[arg(long, value_name = "FILE", requires = "public")]
    pub private: Option<PathBuf>,
    /// Path of the public key instead (SPKI PEM).
    #[arg(long, value_name = "FILE", requires = "private")]
    pub public: Option<PathBuf>,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> ExitCode {
    let (private, public) = match (args.private, args.public) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            let dir = args.out.unwrap_or_else(|| PathBuf::from("."));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                return super::fail(&format!("{}: {e}", dir.display()));
            }
            (dir.join(PRIVATE_KEY_FILE), dir.join(PUBLIC_KEY_FILE))
        }
    };
    match write_key_pair(&private, &public, args.force) {
        Ok((_, id)) => {
            println!("private key: {}", private.display());
            println!("public key:  {}", public.display());
            println!("key id:      {id}");
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e),
    }
}
