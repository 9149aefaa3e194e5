// AXI4-Stream slave -> pixel stream.
//
// A frame is PIXELS pixels of C elements of EB bits. Each beat carries BE elements, element j in
// s_axis_tdata[j*EB +: EB]; a pixel takes ceil(C / BE) beats (the last one partly filled, its
// upper elements ignored), and tlast marks the last beat of a frame. A beat whose tlast disagrees
// with that position sets the sticky frame_error flag (the stream is still consumed as if framed
// correctly). Back-pressure: a beat is taken only while the assembled pixel can move on.
`default_nettype none
module bnnc_axis_in #(
    parameter int EB = 8,
    parameter int C = 3,
    parameter int BE = 3,
    parameter int PIXELS = 1,
    parameter int TW = 32
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            s_axis_tvalid,
    output logic            s_axis_tready,
    /* verilator lint_off UNUSEDSIGNAL */  // bits above BE*EB are padding
    input  logic [  TW-1:0] s_axis_tdata,
    /* verilator lint_on UNUSEDSIGNAL */
    input  logic            s_axis_tlast,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [C*EB-1:0] out_data,
    output logic            frame_error
);
  localparam int BPP = (C + BE - 1) / BE;  // beats per pixel
  localparam int BW = BE * EB;  // used bits per beat
  localparam int BB = BPP > 1 ? $clog2(BPP) : 1;
  localparam int PB = PIXELS > 1 ? $clog2(PIXELS) : 1;

  logic [BPP*BW-1:0] pixel;
  logic [BB-1:0] beat;
  logic [PB-1:0] pix;

  wire take = s_axis_tvalid && s_axis_tready;
  wire last_beat = beat == BB'(BPP - 1);
  wire frame_end = last_beat && pix == PB'(PIXELS - 1);

  assign s_axis_tready = !out_valid || out_ready;
  /* verilator lint_off UNUSEDSIGNAL */
  wire [BPP*BW-1:0] pixel_view = pixel;  // elements beyond C are padding of the last beat
  /* verilator lint_on UNUSEDSIGNAL */
  assign out_data = pixel_view[C*EB-1:0];

  always_ff @(posedge clk) begin
    if (take) pixel[beat*BW+:BW] <= s_axis_tdata[BW-1:0];
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      beat <= '0;
      pix <= '0;
      out_valid <= 1'b0;
      frame_error <= 1'b0;
    end else begin
      if (out_valid && out_ready) out_valid <= 1'b0;
      if (take) begin
        if (s_axis_tlast != frame_end) frame_error <= 1'b1;
        if (last_beat) begin
          beat <= '0;
          out_valid <= 1'b1;
          pix <= frame_end ? '0 : pix + 1'b1;
        end else begin
          beat <= beat + 1'b1;
        end
      end
    end
  end
endmodule
`default_nettype wire
