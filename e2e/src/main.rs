fn main() {
    eprintln!("bitscale-e2e: not built yet");
    std::process::exit(1);
}
