//! The one komptroller binary.
#![forbid(unsafe_code)]

fn main() {
    println!("komptroller");
}
