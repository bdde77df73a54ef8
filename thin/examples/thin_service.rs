//! A pool service on its own: `thin_service METADATA DATA SOCKET` serves the pool until
//! SIGTERM or SIGINT (what `rustbk thin serve` does; the service tests run it).

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, meta, data, socket] = args.as_slice() else {
        eprintln!("usage: thin_service METADATA DATA SOCKET");
        std::process::exit(2);
    };
    let opts = rustbk_thin::pool::PoolOptions::default();
    println!("CHILD serving");
    let (meta, data, socket) = (Path::new(meta), Path::new(data), Path::new(socket));
    match rustbk_thin::service::run(meta, data, socket, opts, None) {
        Ok(()) => println!("CHILD stopped"),
        Err(e) => {
            eprintln!("thin_service: {e}");
            std::process::exit(1);
        }
    }
}
